"""Pages people look at: the platform's review page and the technician's device page."""
