//! Placeholder: the TaskService client with backoff lands with the task service.
