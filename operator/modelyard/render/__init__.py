"""Pure functions: a validated ModelDeployment (plus a revision) -> the child objects it should have.

Nothing here talks to the API server, reads files or imports kopf (import-linter enforces it), so every
function is tested against golden files.
"""
