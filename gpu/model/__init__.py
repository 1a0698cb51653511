"""What a CRAM network is: its layers, mixers, routers and decode state (no training code here).

One file per mixer (fla's ``layers/``): :mod:`.ssm` (``S``), :mod:`.attention` (``G``, ``W``),
:mod:`.cram` (``A``, the CRAM layer and the losses it owns); the shared pieces in :mod:`.layers`
and :mod:`.mixer`; :mod:`.network` the block and the model; :mod:`.routers` the router registry;
:mod:`.state` the decode state, :mod:`.inference` generation; :mod:`.baselines` the transformer;
:mod:`.config` the ``model`` and ``router`` config sections.
"""

from cramkit.gpu.model.network import MIXERS, Block, CramModel, make_block

__all__ = ["MIXERS", "Block", "CramModel", "make_block"]
