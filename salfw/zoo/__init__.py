"""salfw's model zoo: the built-in MNIST networks, sample digits and the MNIST reader.

* :mod:`salfw.zoo.mnist` reads MNIST in its standard IDX format.
* :mod:`salfw.zoo.toolkit` builds, trains, measures, saves and loads small
  classifiers (the GeoSal thesis's ``Mnist_net`` operations).
* :mod:`salfw.zoo.samples` gives the shipped sample digits.
* :mod:`salfw.zoo.plugin` serves the shipped weights as ``builtin:NAME`` models.

Kept free of imports here so that ``import salfw.zoo`` stays cheap.
"""
