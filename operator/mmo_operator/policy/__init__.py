"""Isolation policy (pure): admission rules, NetworkPolicies, the pods' environment."""
