"""Evaluation of pretrained encoders: k-NN, linear probe, attentive probe, fine-tuning."""
