"""Stage 4, second looks at a plan: part-empty nodes re-planned, part-filled servers emptied into
the others' room, first-fit decreasing wherever it packs cheaper."""
