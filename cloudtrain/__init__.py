"""cloudtrain: rent a GPU machine, train on it, bring the model home, give the machine back."""

__version__ = "0.1.0"
