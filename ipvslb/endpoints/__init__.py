"""Where the apiserver backends come from (static list, Kubernetes API)."""
