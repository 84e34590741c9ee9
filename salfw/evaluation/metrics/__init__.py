"""salfw's built-in metrics, registered as a plugin (entry point ``metrics``) exactly as a third
party registers its own. Every metric scores a batch at once and returns one value per sample;
see each module for the paper, the formula and where each default comes from:

* :mod:`.flipping` -- ``morf``, ``lerf``, ``abpc``, ``deletion``, ``insertion``
* :mod:`.image` -- ``png-size``, ``ssim``
* :mod:`.randomization` -- ``randomization``
* :mod:`.faithfulness` -- ``completeness``, ``sensitivity-n``, ``infidelity``, ``max-sensitivity``
* :mod:`.localisation` -- ``pointing-game``, ``runtime``
"""

from salfw.core.hookspecs import hookimpl

from .faithfulness import FAITHFULNESS
from .flipping import FLIPPING
from .image import IMAGE
from .localisation import LOCALISATION
from .randomization import RANDOMIZATION

ALL = (*FLIPPING, *IMAGE, *RANDOMIZATION, *FAITHFULNESS, *LOCALISATION)


@hookimpl
def salfw_register_metrics(register):
    for cls in ALL:
        register(cls)
