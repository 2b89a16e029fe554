"""Preparation stage: the embedded default model and adding control tokens to a base model."""
