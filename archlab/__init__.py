"""archlab's one import namespace: ``archlab.arch``, ``archlab.train``, ``archlab.launch``, ...

The code lives in the repository's top-level folders (``arch/ train/ launch/ deploy/ bench/
configs/``) and every module imports the others as ``archlab.<folder>``, so a user's own
``train.py`` or ``launch/`` never shadows archlab's. ``__path__`` below makes those folders this
package's subpackages, wherever they are installed (the repository, or site-packages next to this
folder). The short names (``import train``) still work: they are aliases of the same modules
(``archlab/short_names.py``). Commands: ``python -m archlab train --model=mlp`` or the ``archlab``
console script; ``python -m launch.train`` is kept.
"""

import os as _os

_HERE = _os.path.dirname(_os.path.abspath(__file__))
# this folder first (short_names, __main__), then the folder that holds arch/, train/, launch/, ...
__path__ = [_HERE, _os.path.dirname(_HERE)]

SUBPACKAGES = ("arch", "train", "launch", "deploy", "bench", "configs")
