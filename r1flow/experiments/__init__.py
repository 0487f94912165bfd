"""The paper's findings reproduced at tiny scale (issue 7): compute accounting and the verdict
on each claim over seeds. The flow that runs the experiments builds on these."""
