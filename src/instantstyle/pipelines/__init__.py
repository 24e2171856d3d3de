"""Generation modes built on the one ``InstantStyle`` object (diffusers pipelines via ``from_pipe``)."""
