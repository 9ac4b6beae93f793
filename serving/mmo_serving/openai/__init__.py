"""The OpenAI-compatible HTTP protocol of the front, independent of the engine.

- :mod:`.schema`: request and response models, :class:`~.schema.ApiError`;
- :mod:`.errors`: the error shape ``{"error": {"message", "type", "param", "code"}}``
  for every answer that is not a success, 404 and 405 included;
- :mod:`.images`: the inline images of a request (``data:`` URLs only);
- :mod:`.chat`: a chat request as a :class:`~mmo_serving.backend.ChatInput`, and the
  completion body;
- :mod:`.embeddings`: an embeddings request as
  :class:`~mmo_serving.backend.EmbedInput` items, and the list body;
- :mod:`.sse`: server-sent events from :class:`~mmo_serving.backend.ChatDelta` pieces.
"""
