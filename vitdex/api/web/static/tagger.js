// Tagging the current selection from any page (the "Tag…" button in the header).
"use strict";
