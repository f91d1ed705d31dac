"""Pure domain logic: no Kafka, AWS, Redis or HTTP imports (an import-linter contract holds it)."""
