"""Evaluation of pretrained encoders: k-NN, linear probe, attentive probe, fine-tuning, in
one registry (protocols.py), run after training (run.py) or during it (monitor.py)."""
