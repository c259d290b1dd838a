def described(name, **fields):
    return {"runtime": name, **fields}
