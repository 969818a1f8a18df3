"""Chat: lines in the room document's ``chat`` array, stamped by the server with who and when."""
