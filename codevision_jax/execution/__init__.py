"""Running the model's code: the executor service's asyncio client (`client`) and the mapping of
its runtime trace to CodeVision's core operations (`ops`)."""
