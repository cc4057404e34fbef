"""Local stand-ins, over real HTTP, for servers the tests cannot run here (Kubernetes API server, GitHub, GitLab)."""
