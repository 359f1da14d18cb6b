"""The study's skeleton: config, results, the stage engine, files, console, errors.

Everything here is plain Python: no numpy, no TensorFlow (tests/test_layout.py checks it), so the
config, the results of a run and the engine load instantly and the report can use them.

    config.py           every setting, its default (the paper's protocol) and its check
    hyperparameters.py  the tuned family's six hyperparameters
    paper.py            the paper's own results, as it prints them
    proportions.py      Wilson and Newcombe intervals of accuracies, from counts
    results.py          what each stage hands on (the contract with the report), STAGES
    engine.py           run folders, stages skipped when their inputs are unchanged, run status
    environment.py      installed versions, the lock, the CPU's instruction sets (run facts)
    files.py            atomic writes, JSON, safe file names, folders replaced in one step
    console.py          messages and progress
    errors.py           the errors chimuf reports as one line
"""
