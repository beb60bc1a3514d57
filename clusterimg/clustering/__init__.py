"""Clustering models: how scored pairs or feature vectors become clusters."""
