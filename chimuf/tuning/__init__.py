"""Keras Tuner behind the tuning stage, and its distributed mode.

    space.py     the search space over the six hyperparameters
    search.py    the seeded oracle, the tuner with chimuf's hooks, the model family (imports Keras Tuner)
    protocol.py  addresses, roles and the epoch reports workers send the chief
    chief.py     the chief's oracle and serving loop (imports Keras Tuner)
"""
