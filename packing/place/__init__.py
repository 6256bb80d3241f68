"""Stage 3, placing: whole servers filled with real models, their pods on concrete nodes, and
the fleet's view of the room left in them."""
