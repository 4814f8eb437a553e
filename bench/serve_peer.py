#!/usr/bin/env python3
"""The PyTorch peer of `patchwise serve`: the same model job behind Python's standard
HTTP server, written the way a PyTorch user would: ThreadingHTTPServer, one forward
pass per request (no batching), the image decoded with PIL, the patches cut and fused
as bench/peer.py does (2x2 of 18 on 28x28, input 32, mean fusion). It answers
POST /v1/predict with the fused probabilities, the class and each patch's
probabilities as JSON, and prints its port on stdout once it listens.

  bench/serve_peer.py [--model small-cnn|vgg16] [--port 0] [--threads N]
"""

import argparse
import io
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer  # noqa: E402  (the benchmark's models)


def build(model_name):
    torch.manual_seed(0)
    backbone = peer.Vgg16(1) if model_name == "vgg16" else peer.SmallCnn(1, peer.INPUT)
    boxes = [(y, x) for y in (0, 10) for x in (0, 10)]
    model = peer.PatchClassifier(backbone, torch.tensor([0.286]), torch.tensor([0.353]), boxes, 18)
    return model.eval()


def make_handler(model):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # As patchwise serve does: without it a lone client waits on Nagle's algorithm.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/v1/predict":
                return self.reply(404, {"error": "no such path"})
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            try:
                image = Image.open(io.BytesIO(body)).convert("L").resize((28, 28))
            except Exception as e:  # what a user's server does with a bad upload
                return self.reply(400, {"error": str(e)})
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).view(1, 1, 28, 28)
            with torch.inference_mode():
                patch_logits, log_probs = model(x)
            probs = log_probs[0].exp()
            self.reply(200, {"probabilities": probs.tolist(), "class": int(probs.argmax()),
                             "patch_probabilities": torch.softmax(patch_logits[0], 1).tolist()})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small-cnn", choices=["small-cnn", "vgg16"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(build(args.model)))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
