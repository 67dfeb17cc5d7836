"""Profile import from CSV files (``clew import``): reading and checking the file
(:mod:`clew.imports._csv`), probabilistic matching against existing profiles with Splink
(:mod:`clew.imports.matching`), the import ledger and review queue in ``imports.db``
(:mod:`clew.imports.ledger`), and the import itself (:mod:`clew.imports.importer`).
"""
