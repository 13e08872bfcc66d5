"""Loads an asciicast recording with asciinema's own reader and prints what the Rust test
checks: the header fields, whether event times rise monotonically, the resize events, where
each resize falls in the output, and the event kinds."""
import json
import sys

from asciinema import asciicast

with asciicast.open_from_url(sys.argv[1]) as cast:
    header = cast.v2_header
    times, kinds, resizes, resize_offsets = [], [], [], []
    output = ""
    for time, kind, data in cast.events():
        times.append(time)
        kinds.append(kind)
        if kind == "o":
            output += data
        elif kind == "r":
            resizes.append(data)
            resize_offsets.append(len(output))
    print(json.dumps({
        "version": header["version"],
        "width": header["width"],
        "height": header["height"],
        "timestamp": header["timestamp"],
        "title": header.get("title"),
        "term": header.get("env", {}).get("TERM"),
        "monotonic": all(a <= b for a, b in zip(times, times[1:])) and len(times) > 0,
        "kinds": sorted(set(kinds)),
        "resizes": resizes,
        "resize_output_offsets": resize_offsets,
        "output": output,
    }))
