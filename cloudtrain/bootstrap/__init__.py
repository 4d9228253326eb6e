"""Make nodes ready: probe -> facts -> plan -> apply. Sees a Cluster and a Remote, never a cloud."""
