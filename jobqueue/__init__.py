"""The contract between the API (producer) and the workers (consumers): task names, queues,
payloads and the one Celery configuration both sides share."""
