"""`mlc review`: a local web app to browse the catalog and the published versions, and to correct
them (relabel, reject, restore, not-a-duplicate, takedown), every action logged and undoable.
See docs/review.md."""
