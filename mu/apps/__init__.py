"""Jobs built from the state classes; each module defines a config and a first state."""
