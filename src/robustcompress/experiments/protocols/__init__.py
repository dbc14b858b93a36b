"""Each paper's evaluation protocol as one library function (the CLI commands call these).

- :mod:`.loading`: one checkpoint + its dataset, with the shape check every command needs.
- :mod:`.pruning`: Guo et al. 2018, robustness after every round of progressive pruning.
- :mod:`.sap`: Dhillon et al. 2018, SAP / stochastic baselines and the FGSM sweep.
- :mod:`.quantization`: Song et al. 2021, k-bit weights, per-layer ||dW||_2 and packed size.
- :mod:`.anp`: Madaan et al. 2020, ANP-VS (and adversarial fine-tuning), PGD accuracy and V.
- :mod:`.tensorization`: Bulat et al. 2021, Tucker tensorization with randomised rank.
- :mod:`.adaptive`: the adaptive robustness evaluation of a checkpoint (optionally converged).
"""
