"""The HTTP front door: SendGrid-compatible ingress."""
