"""A fourth model family defined outside medq's tree, as a user would write one: a two-class
classifier of synthetic images (is there a bright disc?). Registered with one line,
``MEDQ_FAMILIES=tests.fourth_family.family:FAMILY``, and run through real workers."""
