"""Jobs: ship the workdir, launch detached, stream the log, bring outputs home, record the run."""
