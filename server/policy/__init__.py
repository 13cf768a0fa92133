"""Course rules that turn runs into grades: deadlines, late policy, extensions, which submission counts."""
