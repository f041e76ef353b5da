"""One reconcile function per object kind: observe -> render -> apply -> compute status."""
