"""Channel-dependency analysis: slots, links and coupled groups."""
