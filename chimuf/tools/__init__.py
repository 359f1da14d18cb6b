"""The single steps people reach for, outside a study: each a `chimuf` command.

    predict.py         chimuf predict MODEL IMAGE...
    explain_files.py   chimuf predict ... --explain OUTDIR
    evaluate_folder.py chimuf evaluate MODEL DIR
    tune_worker.py     chimuf tune-worker --chief HOST:PORT
    compare.py         chimuf compare RUN_A RUN_B (results.json only, no TensorFlow)
"""
