"""Per-RPC latency through Python grpcio: a client that is not tonic.

tonic's own client once hid a 40 ms server-side stall (Nagle) that every other
client saw, so the bench measures each RPC through this client too, beside
tonic's figure from the same run. Messages come from the servers' reflection,
so no generated code is needed.

usage: grpcio_latency.py AUTH_ADDR TASK_ADDR N RUN_ID
prints {"SignUp": [ms, ...], "Login": [...], "Refresh": [...],
        "CreateTask": [...], "ListTasks": [...], "GetTask": [...],
        "DeleteAccount": [...]}
"""

import json
import sys
import time
import uuid

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def method(channel, service, name):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    d = pool.FindServiceByName(service).FindMethodByName(name)
    req = message_factory.GetMessageClass(d.input_type)
    res = message_factory.GetMessageClass(d.output_type)
    call = channel.unary_unary(
        f"/{service}/{name}",
        request_serializer=req.SerializeToString,
        response_deserializer=res.FromString,
    )
    return req, call


def timed(samples, name, call, request, **kw):
    started = time.perf_counter()
    answer = call(request, timeout=10, **kw)
    samples.setdefault(name, []).append((time.perf_counter() - started) * 1e3)
    return answer


def main():
    auth_addr, task_addr, n, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    auth = grpc.insecure_channel(auth_addr)
    task = grpc.insecure_channel(task_addr)
    SignUp, sign_up = method(auth, "auth.v1.AuthService", "SignUp")
    Login, login = method(auth, "auth.v1.AuthService", "Login")
    Refresh, refresh = method(auth, "auth.v1.AuthService", "Refresh")
    Create, create = method(task, "task.v1.TaskService", "CreateTask")
    List, list_tasks = method(task, "task.v1.TaskService", "ListTasks")
    Get, get = method(task, "task.v1.TaskService", "GetTask")
    Delete, delete = method(auth, "auth.v1.AuthService", "DeleteAccount")
    samples = {}
    for i in range(n):
        email = f"py{i}-{run}@example.com"
        member = timed(samples, "SignUp", sign_up, SignUp(
            email=email, password="correct horse battery", nickname="Py", region="Asia/Seoul"))
        session = timed(samples, "Login", login, Login(
            email=email, password="correct horse battery"))
        token = timed(samples, "Refresh", refresh, Refresh(
            refresh_token=session.refresh_token)).access_token
        auth_md = [("authorization", f"Bearer {token}")]
        task_md = auth_md
        created = timed(samples, "CreateTask", create, Create(
            request_id=str(uuid.uuid4()), title="bench", due_local="2026-12-24T18:00",
            consistency_token=member.consistency_token), metadata=task_md)
        timed(samples, "ListTasks", list_tasks, List(page_size=10), metadata=task_md)
        timed(samples, "GetTask", get, Get(id=created.task.id), metadata=task_md)
        timed(samples, "DeleteAccount", delete, Delete(
            password="correct horse battery"), metadata=auth_md)
    print(json.dumps(samples))


if __name__ == "__main__":
    main()
