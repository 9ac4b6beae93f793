"""Federated fine-tuning (issue 7, optional): update privacy now; the Flower apps to come."""
