"""The drift lab: a procedural world with known truth, a small causal video model trained on it, and the
measured answer to whether TokenTrim reduces drift (``docs/drift-lab.md``).

The lab uses the server's public pieces (loader, pipelines, engine runners, policies) unmodified; the
server never imports the lab.
"""
