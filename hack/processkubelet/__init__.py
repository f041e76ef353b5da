"""A kubelet of the project's own for the local cluster: pods bound to its node run as real local processes.

kwok fakes nodes for scale; this one runs what the operator creates: Triton (from the nvidia-pytriton wheel) and
the converter (from the venv), each container in its own root (enter.py), each pod in a network namespace of
its own with a pod IP in 198.18.0.0/15 (network.py),
with probes, restarts, termination messages and graceful deletion. See docs/local-cluster.md.

    python -m processkubelet --kubeconfig K --state DIR [--node proc-node-0]
"""
