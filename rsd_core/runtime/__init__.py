"""The shared runtime under backends and rewards: finding and loading checkpoints, per-sequence KV caches,
and the HTTP client for served models. Backends and rewards both import from here, never from each other.
"""
