"""Bundle reader, Session API and backend runners (issues #4 and #5)."""
