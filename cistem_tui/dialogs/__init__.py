"""Modal dialogs: the import dialogs of the Assets panel and small prompts."""
