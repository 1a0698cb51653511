"""cramkit: the import root of the cram toolkit (distribution ``cram-toolkit``, command ``cram``).

The project's top-level folders map into it (see pyproject.toml):

- ``cramkit`` (folder ``cramkit/``): the shared base every layer uses: errors, atomic I/O, progress,
  JSON conversion, the result contract;
- ``cramkit.theory`` (``theory/``): closed forms, curve models, fitting and statistics;
- ``cramkit.sim`` (``sim/``): the SRCD generator and the exact routing-cost simulator;
- ``cramkit.gpu`` (``gpu/``): everything that runs a torch model (on the CPU or a GPU): the model,
  the fused ops with their references, training, evaluation, measurements on models;
- ``cramkit.cli`` (``cram_cli/``): one module per ``cram`` command.

Each layer imports only the ones listed before it.
"""
