"""A stand-in for grpcurl, for checking the README's grpcurl examples.

grpcurl itself cannot be installed on the CI machine, so this implements the
part of its command line the README uses, over server reflection exactly as
grpcurl does: `-plaintext`, `-d JSON`, `-H "name: value"`, then
`HOST:PORT list` or `HOST:PORT package.Service/Method`. Output follows
grpcurl: the response as JSON with camelCase field names, or `ERROR:` with
the code and message on stderr and a non-zero exit.

When MEMBERFLOW_SHIM_STATE names a directory, each response is also saved
there as `<Method>.json`, so the checking script can assert on it.
"""

import json
import os
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def parse(argv):
    data, headers, positional = "{}", [], []
    args = iter(argv)
    for arg in args:
        if arg == "-plaintext":
            continue
        if arg == "-d":
            data = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers.append((name.strip().lower(), value.strip()))
        elif arg.startswith("-"):
            sys.exit(f"grpcurl shim: unsupported flag {arg}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        sys.exit(f"grpcurl shim: expected HOST:PORT and a verb, got {positional}")
    return data, headers, positional[0], positional[1]


def main():
    data, headers, address, verb = parse(sys.argv[1:])
    channel = grpc.insecure_channel(address)
    database = ProtoReflectionDescriptorDatabase(channel)
    if verb == "list":
        for service in sorted(database.get_services()):
            print(service)
        return
    service, _, method = verb.rpartition("/")
    pool = descriptor_pool.DescriptorPool(database)
    descriptor = pool.FindServiceByName(service).FindMethodByName(method)
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    request = json_format.Parse(data, request_type())
    # Server-streaming methods print one JSON object per message, as grpcurl
    # does; their saved state is the list of messages.
    streaming = descriptor.server_streaming
    call = (channel.unary_stream if streaming else channel.unary_unary)(
        f"/{service}/{method}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    try:
        answer = call(request, metadata=headers, timeout=10)
        responses = list(answer) if streaming else [answer]
    except grpc.RpcError as e:
        code = e.code().name.replace("_", " ").title().replace(" ", "")
        print(f"ERROR:\n  Code: {code}\n  Message: {e.details()}", file=sys.stderr)
        sys.exit(1)
    texts = [json_format.MessageToJson(r, indent=2) for r in responses]
    for text in texts:
        print(text)
    state = os.environ.get("MEMBERFLOW_SHIM_STATE")
    if state:
        saved = [json.loads(t) for t in texts]
        with open(os.path.join(state, f"{method}.json"), "w") as f:
            json.dump(saved if streaming else saved[0], f)


if __name__ == "__main__":
    main()
