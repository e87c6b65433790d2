"""The local development cluster: real Kubernetes control-plane programs built from the
Go module proxy (dev/controlplane) and a Python node agent that runs pods as processes."""
