"""Engine adapters: they translate the forcing state machine into each engine's hook."""
