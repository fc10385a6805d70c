"""The run: the runner, the plan of jobs, config checks, costs and describe."""
