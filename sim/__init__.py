"""cram.sim: the SRCD benchmark generator, the simulated routers and the exact cost engine."""
